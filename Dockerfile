# The Planchet server. Jobs' files live in /data (mount your data there); with no
# PLANCHET_REDIS the server runs its own redis-server with its AOF in /data/.planchet.
#   docker build -t planchet .
#   docker run -p 5005:5005 -v "$PWD/data:/data" -e PLANCHET_TOKEN=change-me planchet
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md server.py ./
COPY planchet ./planchet
RUN pip install --no-cache-dir .
ENV PLANCHET_HOST=0.0.0.0 \
    PLANCHET_DATA_DIR=/data
VOLUME /data
EXPOSE 5005
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5005/health')"
CMD ["planchet", "serve"]
