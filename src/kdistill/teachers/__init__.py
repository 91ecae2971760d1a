"""Teachers: prompted in-process models, fine-tuned encoders, OpenAI-compatible endpoints (llama-server, vLLM),
ensembles; elicitation of their answers into the cache, for label and generation tasks."""
