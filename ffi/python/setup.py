"""Builds liboxccl.so from the Rust sources (../Cargo.toml, crate oxccl-ffi) into the package with
setuptools-rust, so `pip install ./ffi/python` needs only a Rust toolchain (cargo) besides pip.
OXCCL_PYTHON_NO_BUILD=1 skips that: the package then loads $OXCCL_LIBRARY, a repository's
target/{release,debug}/liboxccl.so or the system's, as before. OXCCL_PYTHON_DEBUG_BUILD=1 builds
cargo's dev profile instead of release (quicker where one is built already, as in CI). The
library is built in the repository's target/ directory, so `pip install` reuses cargo's cache.
Everything else is in pyproject.toml."""

import os

from setuptools import setup

rust_extensions = []
if not os.environ.get("OXCCL_PYTHON_NO_BUILD"):
    from setuptools_rust import Binding, RustExtension

    rust_extensions.append(
        RustExtension(
            "oxccl.liboxccl",  # installed as oxccl/liboxccl.<python tag>.so
            path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Cargo.toml"),
            binding=Binding.NoBinding,
            py_limited_api=False,
            debug=bool(os.environ.get("OXCCL_PYTHON_DEBUG_BUILD")),
        )
    )

setup(rust_extensions=rust_extensions, zip_safe=False)
