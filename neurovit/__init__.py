"""NeuroViT core: the logic every stage shares (data, preprocessing, model, metrics, artifact store).

Research tool only: not a medical device, not for diagnosis.
"""

__version__ = "0.1.0"

RESEARCH_DISCLAIMER = (
    "NeuroViT is a research tool. Its outputs are not a diagnosis "
    "and must not be used for clinical decisions."
)
