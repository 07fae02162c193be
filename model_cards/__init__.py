"""Jinja templates of the Hub model cards (installed as `hf_instruct.model_cards`)."""
