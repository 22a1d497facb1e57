"""The GPT-2 model of the book, its tokenizer and weights, and what turns it into a classifier."""
