"""Offline preference optimisation (`hftune dpo`): DPO and its losses, KTO, ORPO, SimPO on TRL."""
