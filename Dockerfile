# Mirrors the README's install exactly: Python 3.11, then scripts/setup.sh
# (torch==2.13.0 CPU build first, then the package with its pinned ranges).
FROM python:3.11-slim
WORKDIR /opt/verirepair
COPY . .
RUN bash scripts/setup.sh
ENTRYPOINT ["verirepair"]
