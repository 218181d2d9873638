"""Bridges between trioflow and the asyncio world (needs trio-asyncio)."""
