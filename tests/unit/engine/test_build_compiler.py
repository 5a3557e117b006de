"""The compiler of a llama.cpp library, read from its ELF .comment section
(llama_engine.build_compiler): tiny shared libraries built here by each compiler."""

import shutil
import subprocess

import pytest

from llama_engine.build_compiler import (comment_lines, compiler_of, cpu_backend_library, cpu_backend_variant,
                                         llama_cpp_compiler)


def library(tmp_path, compiler: str):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed here")
    source = tmp_path / "x.c"
    source.write_text("int f(void) { return 1; }\n")
    out = tmp_path / f"libx-{compiler}.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return out


def test_a_gcc_library_names_gcc(tmp_path):
    assert compiler_of(library(tmp_path, "gcc")).startswith("GCC: (")


def test_a_clang_library_names_clang_over_the_gcc_lines_of_its_c_runtime(tmp_path):
    lib = library(tmp_path, "clang-19")
    assert "clang version 19." in compiler_of(lib)
    assert len(comment_lines(lib)) >= 1


def test_without_a_comment_section_or_elf_the_compiler_is_unknown(tmp_path):
    lib = library(tmp_path, "gcc")
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy is not installed here")
    subprocess.run(["objcopy", "--remove-section", ".comment", str(lib)], check=True)
    assert comment_lines(lib) == [] and compiler_of(lib) == "unknown"
    text = tmp_path / "notes.txt"
    text.write_text("GCC: (not an ELF file)")
    assert compiler_of(text) == "unknown"


def test_the_installed_llama_cpp_names_its_compiler():
    assert llama_cpp_compiler().startswith("GCC: (") or "clang version" in llama_cpp_compiler()


def test_a_variant_folder_first_on_ld_library_path_is_the_backend_and_names_its_variant(tmp_path, monkeypatch):
    # the image's variants (gateway/server/llama_cpu_variant.py): a folder with the backend and variant.json
    folder = tmp_path / "avx512"
    folder.mkdir()
    backend = library(tmp_path, "clang-19").rename(folder / "libggml-cpu.so.0")
    (folder / "variant.json").write_text('{"name": "avx512", "rank": 2, "needs": ["avx512f"]}')
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{tmp_path / 'elsewhere'}:{folder}")
    # a process that has not loaded llama.cpp yet (none mapped): what the dynamic linker will load
    assert cpu_backend_library(maps=str(tmp_path / "no-maps")) == backend
    assert cpu_backend_variant(backend) == "avx512"


def test_without_a_variant_the_backend_is_the_packages_own():
    import llama_cpp  # noqa: F401  (loaded: the backend is the one mapped into this process)

    library = cpu_backend_library()
    assert library is not None and library.name.startswith("libggml-cpu") and library.is_file()
    assert cpu_backend_variant(library) == "this machine's build"
