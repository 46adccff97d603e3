"""placeholder"""
import dataclasses
@dataclasses.dataclass(frozen=True)
class Config:
  pass
