# jigsawkit on a CUDA-enabled PyTorch base image, installed the README's way.
#   docker build -t jigsawkit .
#   docker run --gpus all -v $PWD/runs:/app/runs jigsawkit run experiments/quickstart.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY jigsawkit ./jigsawkit
RUN pip install --no-cache-dir -e '.[dev]'
COPY experiments ./experiments
COPY plugins ./plugins

# W&B never prompts: offline unless the run says otherwise and a key is given.
ENV WANDB_MODE=offline JIGSAWKIT_CACHE=/app/.cache/jigsawkit
ENTRYPOINT ["jigsawkit"]
CMD ["--help"]
