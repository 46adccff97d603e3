"""alignlab: how well do RLHF and DPO optimize the KL-regularized reward objective?"""
