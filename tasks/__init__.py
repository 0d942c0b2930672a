"""What producers import: `from tasks import notify, notify_many, InvalidNotification`."""

from tasks.api import Mailroom, notify, notify_many
from tasks.notification import InvalidNotification, Notification

__all__ = ["InvalidNotification", "Mailroom", "Notification", "notify", "notify_many"]
