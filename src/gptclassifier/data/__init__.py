"""The messages: the SMS Spam Collection, the practice set, the split and the data loaders."""
