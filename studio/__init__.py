"""The local studio: a web app from a conversation video to new conversations (``python -m studio``)."""
