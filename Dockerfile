# jigsawkit on a CUDA-enabled PyTorch base image, installed as users install it: a regular
# (not editable) install, without the test tools of the `dev` extra.
#   docker build -t jigsawkit .
#   docker run --gpus all -v $PWD/runs:/app/runs jigsawkit run experiments/quickstart.yaml
# Every GPU of the machine, data-parallel (see docs/distributed.md):
#   docker run --gpus all --ipc=host -v $PWD/runs:/app/runs --entrypoint torchrun jigsawkit \
#       --standalone --nproc_per_node=8 -m jigsawkit run experiments/baseline.yaml --out runs/ddp
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY jigsawkit ./jigsawkit
RUN pip install --no-cache-dir . && rm -rf build jigsawkit.egg-info
COPY experiments ./experiments
COPY plugins ./plugins

# W&B never prompts: offline unless the run says otherwise and a key is given.
ENV WANDB_MODE=offline JIGSAWKIT_CACHE=/app/.cache/jigsawkit
ENTRYPOINT ["jigsawkit"]
CMD ["--help"]
