"""Exact full-ranking evaluation, split over ranks and reduced: ranking kernels (ranking) and
the metric pass over sharded item tables (evaluate). Imports: torch, distrec.config, data,
distributed, nn.
"""
