"""mm1data: raw multimodal web data to MM1-style pre-training shards."""

__version__ = "0.1.0"
