"""Packaging: the design card keeps protocols/, bpf/ and queries/ at the top of the checkout, but installed they
live inside the apptrace package (apptrace.protocols, apptrace.bpf, apptrace.queries), so that the only top-level
names apptrace puts in site-packages are `apptrace` and `px` (PxL scripts say `import px`)."""

from setuptools import Extension, find_packages, setup

# checkout folder -> package name it is installed as
MAPPED = {"protocols": "apptrace.protocols", "bpf": "apptrace.bpf", "queries": "apptrace.queries"}


def packages() -> list[str]:
    out = find_packages(include=["apptrace", "apptrace.*", "px"])
    for folder, name in MAPPED.items():
        out += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]
    return out


setup(
    packages=packages(),
    package_dir={name: folder for folder, name in MAPPED.items()},
    package_data={"apptrace.bpf": ["*.c", "*.h"], "apptrace.queries": ["*.pxl"]},
    # Capture's ring-buffer header walk (apptrace/capture/ringbuf.py falls back to Python without it).
    # optional: without a compiler the install still works, walking in Python (doctor says so).
    ext_modules=[Extension("apptrace.capture._ringwalk", ["apptrace/capture/_ringwalk.c"], extra_compile_args=["-O2"],
                           optional=True)],
)
