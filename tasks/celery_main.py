"""`celery -A tasks.celery_main` (Flower, `celery inspect`): the worker app for the environment."""

from settings import load_settings
from tasks.worker_app import create_app

app = create_app(load_settings())
