"""The live dashboard: one page of every lane's queue, served by ``queuewatch dashboard``."""
