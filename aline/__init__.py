"""Simplified ALINE: amortized posterior over a latent state + an active-query policy, trained with ignite."""

__version__ = "0.1.0"
