"""Build hook for quictund's compiled modules; everything else is in pyproject.toml.

``quictund/quic/_aioquic_builder.pyx``, ``_aioquic_protect.pyx``, ``_aioquic_receive.pyx``,
``_aioquic_send.pyx``, ``_aioquic_sched.pyx``, ``_aioquic_transmit.pyx`` and ``_aioquic_ack.pyx``
(Cython) are the aioquic engine's packet builder, packet protection, common receive and send
cases, sliced send queue, send pass and ACK handling in C, and ``_bbr.pyx`` its BBR model (issue 15, docs/performance.md).  They are *optional*:
without a C compiler and Python's headers the build goes on without them and quictund runs
aioquic's own pure-Python code for all of it (the daemon logs a WARNING saying so;
quictund/quic/engine_aioquic_build.py).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = (
    "_aioquic_ack",
    "_aioquic_builder",
    "_aioquic_protect",
    "_aioquic_receive",
    "_aioquic_sched",
    "_aioquic_send",
    "_aioquic_transmit",
    "_bbr",
)

setup(
    ext_modules=cythonize(
        [
            Extension(f"quictund.quic.{name}", [f"quictund/quic/{name}.pyx"], optional=True)
            for name in MODULES
        ],
        language_level=3,
        quiet=True,
    ),
)
