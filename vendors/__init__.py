"""Vendor-driver plugins shipped with mdevfs (installed as ``mdevfs_vendors``).

Each is registered in the ``mdevfs.vendors`` entry-point group of pyproject.toml;
mdevfs finds them there, exactly as it finds a third party's.
"""
