"""`plmjax plan`: the real train step compiled ahead of time for a TPU slice, with its memory, FLOPs and roofline.

    plmjax plan --gin_file=gin_configs/experiments/<experiment>.gin --topology=v5e:4x4 --mesh=data=16
"""
