"""The models page (to be built)."""

from fastapi import APIRouter

router = APIRouter()
