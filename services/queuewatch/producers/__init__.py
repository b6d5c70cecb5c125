"""Producers: the simulator of the September 2022 scenario and the publishing logic."""
