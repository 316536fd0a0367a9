"""Embeddings: Node2Vec on the co-occurrence graphs (later: the LLM news encoder and fusion)."""
