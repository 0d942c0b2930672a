"""Settings of the minimal Django project: what a user adds to send through Mailroom.

No database and no app: `django.core.mail` needs neither. The producer's settings (`MAILROOM`)
are set by each test, for its own Redis.
"""

SECRET_KEY = "tests only, never a real secret"
INSTALLED_APPS: list[str] = []
USE_TZ = True
EMAIL_BACKEND = "tasks.django.EmailBackend"
DEFAULT_FROM_EMAIL = "Shop <shop@example.test>"
