"""Fine-tune a pretrained GPT-2 into a text classifier, following chapter 6 of the book."""

__version__ = "0.1.0"
