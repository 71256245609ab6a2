"""Build hook for quictund's one compiled module; everything else is in pyproject.toml.

``quictund/quic/_aioquic_builder.pyx`` (Cython) is the aioquic engine's packet builder in C
(issue 15, docs/performance.md).  It is *optional*: without a C compiler and Python's headers
the build goes on without it and quictund runs aioquic's pure-Python builder (the daemon logs
a WARNING saying so; ``quictund version`` shows which is in use).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "quictund.quic._aioquic_builder",
                ["quictund/quic/_aioquic_builder.pyx"],
                optional=True,
            )
        ],
        language_level=3,
        quiet=True,
    ),
)
