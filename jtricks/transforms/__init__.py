"""Gradient transformations, one private module per family.

Everything public is re-exported flat from :mod:`jtricks`; import from there.
"""
