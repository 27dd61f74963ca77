"""Small shared helpers, one file per concern (as timm's ``utils/``)."""
