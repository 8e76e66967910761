"""Analyses of trained adapters: MiLoRA's spectra and subspace checks, and the mechanism
analyses of the studies (factor spectra, channel removal, cross-seed similarity)."""
