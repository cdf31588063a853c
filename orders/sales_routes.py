"""The `product_sales` queries over HTTP: what products sold on shipped orders."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from gateway import reads
from gateway.openapi import json_response_doc, problem_response
from gateway.problems import Problem, ProblemType
from gateway.responses import json_response
from orders.responses import ProductSalesView, TopProducts
from orders.sales import Ranking
from orders.sales_queries import SalesQueries

router = APIRouter(tags=["queries"])

PRODUCT_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_WHAT = "the product sales"
_ERRORS: dict[int | str, dict[str, Any]] = {
    422: problem_response("An invalid parameter; `errors` names it."),
    503: problem_response("Redis is unavailable or the sales are being rebuilt."),
}


@router.get(
    "/products/top",
    summary="The best-selling products on shipped orders",
    response_class=Response,
    responses={
        200: json_response_doc(TopProducts, "Highest first, ties by product id."),
        **_ERRORS,
    },
)
async def top_products(
    request: Request,
    by: Annotated[Ranking, Query(description="Rank by revenue or by units.")] = Ranking.REVENUE,
    limit: Annotated[int, Query(ge=1, le=100, description="How many (1-100).")] = 10,
) -> Response:
    found = await reads.read(reads.queries_of(request, SalesQueries).top(by, limit), _WHAT)
    return json_response({"by": by.value, "items": [sales.to_json() for sales in found]})


@router.get(
    "/products/{product_id}/sales",
    summary="What one product sold on shipped orders",
    response_class=Response,
    responses={
        200: json_response_doc(ProductSalesView, "Units, revenue and shipped orders."),
        404: problem_response("The product is on no shipped order."),
        **_ERRORS,
    },
)
async def product_sales(
    request: Request,
    product_id: Annotated[str, Path(description="The product's id.", pattern=PRODUCT_ID)],
) -> Response:
    sales = await reads.read(reads.queries_of(request, SalesQueries).product(product_id), _WHAT)
    if sales is None:
        raise Problem(
            404, f"Product {product_id} is on no shipped order.", type_=ProblemType.NOT_FOUND
        )
    return json_response(sales.to_json())
