"""Text: BM25 indexes (a projection of the log), embedding and reranking models."""
