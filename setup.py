"""Builds zest-edge and its C++ extension (cpp_ext/) with torch.utils.cpp_extension."""
from setuptools import setup

setup()
