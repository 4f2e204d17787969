# syntax=docker/dockerfile:1
#
# The openfal image: `openfal serve` (the gateway) and `openfal worker`. docs/deploy.md tells
# how to build, push and run it.
#
#   docker build -t openfal:0.1.0 .
#   docker build --build-arg OPENFAL_EXTRAS=s3,postgres,models -t openfal-gpu:0.1.0 .
#
# OPENFAL_EXTRAS picks the extras installed. The default (s3,postgres) makes the gateway
# image: no model runtime in it. The GPU worker image adds `models` (torch, diffusers, ...):
# installed from PyPI on linux/amd64, torch==2.13.0 (constraints.txt) is torch's default CUDA
# build, which brings the CUDA libraries as nvidia-* wheels, so this slim base serves GPUs
# as is; the host needs only the NVIDIA driver and container toolkit (on Kubernetes, the
# NVIDIA device plugin or GPU operator). Its image is large (about 10 GB).

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ARG OPENFAL_EXTRAS=s3,postgres
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/openfal
ENV PATH=/opt/openfal/bin:$PATH
WORKDIR /src
# constraints.txt pins every package (the project's rule): the image gets the tested versions.
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install ".[${OPENFAL_EXTRAS}]" -c constraints.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/openfal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed uid/gid (10001) that deploy/kubernetes/ names in runAsUser; the data dirs of both
# commands exist and belong to it, so a plain `docker run` works without volumes too.
RUN groupadd --system --gid 10001 openfal \
    && useradd --system --uid 10001 --gid openfal --home-dir /home/openfal --create-home \
        --shell /usr/sbin/nologin openfal \
    && install -d -o openfal -g openfal -m 0750 /var/lib/openfal /var/lib/openfal-worker /models
COPY --from=build /opt/openfal /opt/openfal
USER 10001:10001
WORKDIR /home/openfal
EXPOSE 8000
ENTRYPOINT ["openfal"]
CMD ["--help"]
