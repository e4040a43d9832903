"""No models: this module exists because Django sends ``post_migrate`` only
to apps that have one, and ``manage.py migrate`` creates or upgrades the
dbos_celery schema on that signal (``apps.py``)."""
