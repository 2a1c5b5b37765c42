"""The main job: `python launch.py --config=configs/resnet.py[:PRESET] --workdir=DIR
[--config.X=V]`, the same command as the installed `imgcls-train`
(imgcls_jax/training/launch.py holds its flags and code; `--help` lists them)."""

from imgcls_jax.training.launch import run

if __name__ == "__main__":
    run()
