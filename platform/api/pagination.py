"""The API's list pages: a page number that is not one of the list's pages
is the client's mistake in a parameter, answered as the list's other bad
parameters are (400 with a code), not as a missing resource (DRF's 404)."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request


class Pages(PageNumberPagination):
    def paginate_queryset(
        self, queryset: Any, request: Request, view: Any = None
    ) -> list[Any] | None:
        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound:
            pages = self.django_paginator_class(queryset, self.get_page_size(request) or 1)
            asked = request.query_params.get(self.page_query_param, "")
            raise ValidationError(
                {
                    self.page_query_param: (
                        f"{asked!r} is not a page of this list: pages are 1 to {pages.num_pages}."
                    )
                },
                code="bad_page",
            ) from None
