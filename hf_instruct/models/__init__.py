"""Model families shipped with hf-instruct."""
