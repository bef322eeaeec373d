"""Executors: the Ray Data driver. Stages know nothing of Ray; runners wire them up."""
