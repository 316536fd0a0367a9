"""LLM news encoder: contrastive LoRA fine-tuning (DeepSpeed), embedding export (Ray Data), GloVe baseline."""
