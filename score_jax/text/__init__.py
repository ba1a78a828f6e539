"""Text in and out of the model: tokenizers and chat formats."""
