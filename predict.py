r"""Segments a video (file or folder of frames) with a trained run; writes an overlay video (and label PNGs).

    python predict.py --workdir=workdirs/synthetic_ma --video=in.mp4 --out=out.mp4
    python predict.py --checkpoint=runs/camvid_ma/checkpoints/8000 --video=frames/ --out=out.mp4 --labels-dir=labels/

The same as `python -m ma_resnet.predict`; flags, exit codes and behaviour: `ma_resnet/predict.py`.
"""
from ma_resnet import predict

if __name__ == '__main__':
  predict.run()
