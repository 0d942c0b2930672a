"""A minimal Django project whose mail goes through Mailroom (see test_django_backend.py)."""
