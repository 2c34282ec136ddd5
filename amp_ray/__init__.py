"""amp_ray: multi-level preference alignment of vision-language models against hallucination."""

__version__ = "0.1.0"
