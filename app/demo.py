"""A small, realistic data set: the first thing a newcomer sees is real grades.

An HVAC maker's pipeline in Shanghai: three project owners, four installation contractors,
four projects and a few dozen logged facts, all recorded through the same path as the API
(so every grade, its evidence and its history are real)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import models as m
from app.domain.rulebook import Rulebook
from app.services.customers import create_customer
from app.services.events import NewEvent, record_event, retract_event
from app.services.projects import create_project


def load_demo(session: Session, rulebook: Rulebook, *, now: datetime) -> bool:
    """Load the demo data unless the database already has customers. True if loaded."""
    if session.scalar(select(func.count()).select_from(m.Customer)):
        return False
    c = lambda **f: create_customer(session, rulebook, f, now=now).id  # noqa: E731
    p = lambda **f: create_project(session, rulebook, f, now=now).id  # noqa: E731
    hospital = c(name="上海市第六人民医院基建处", kind="owner", external_ref="ERP-C-1001", region="上海", rep="李明", contact={"person": "张主任", "phone": "021-64369181"})
    developer = c(name="绿城置业(上海)有限公司", kind="owner", external_ref="ERP-C-1002", region="上海", rep="李明")
    school = c(name="浦东新区教育局后勤中心", kind="owner", external_ref="ERP-C-1003", region="上海", rep="王芳")
    jiangong = c(name="上海建工安装有限公司", kind="installer", external_ref="ERP-C-2001", region="上海", rep="李明", contact={"person": "王伟", "phone": "13912345678"})
    huadong = c(name="华东机电设备安装工程公司", kind="installer", external_ref="ERP-C-2002", region="江苏", rep="李明")
    anda = c(name="安达消防工程有限公司", kind="installer", external_ref="ERP-C-2003", region="上海", rep="王芳")
    c(name="苏州恒信暖通工程有限公司", kind="installer", external_ref="ERP-C-2004", region="江苏", rep="王芳")

    ward = p(name="第六人民医院新门诊楼暖通工程", owner_id=hospital, external_ref="ERP-P-301", amount=3_800_000, rep="李明")
    tower = p(name="绿城·云栖公寓二期中央空调", owner_id=developer, external_ref="ERP-P-302", amount=5_200_000, rep="李明")
    campus = p(name="浦东实验学校体育馆通风", owner_id=school, external_ref="ERP-P-303", amount=900_000, rep="王芳")
    plant = p(name="六院能源站冷水机组更换", owner_id=hospital, external_ref="ERP-P-304", amount=1_600_000, rep="李明")

    day = 0

    def log(type_: str, customer: int | None = None, project: int | None = None, **attributes: Any) -> int:
        nonlocal day
        day += 1
        new = NewEvent(type=type_, customer_id=customer, project_id=project, attributes=attributes, source="demo", external_id=f"demo-{day}", occurred_at=now - timedelta(days=90 - day))
        return record_event(session, rulebook, new, actor="李明" if day % 3 else "王芳", now=now).event.id

    # The hospital: level II — samples, three visits (the manager came on the last), a private meeting.
    log("materials_sent", hospital, items=["samples", "credentials"])
    log("company_introduced", hospital)
    log("contact_obtained", hospital)
    log("visit", hospital, reception="neutral")
    log("visit", hospital, reception="welcoming")
    log("impression_confirmed", hospital)
    log("visit", hospital, ward, reception="welcoming", with_manager=True)
    log("product_understood", hospital)
    log("private_meeting", hospital)
    log("info_shared", hospital, ward, kind="important")
    # The developer: level I, one rejecting visit later repaired by a welcoming one.
    log("materials_sent", developer, items=["price_list"])
    log("company_introduced", developer)
    log("contact_obtained", developer)
    log("visit", developer, reception="neutral")
    log("visit", developer, reception="rejecting")
    log("impression_confirmed", developer)
    log("visit", developer, reception="welcoming")
    # 上海建工安装: level III installer that bids with our product.
    for type_, attrs in [("materials_sent", {"items": ["samples", "price_list"]}), ("company_introduced", {}), ("inquiry_received", {}),
                         ("visit", {"reception": "welcoming"}), ("visit", {"reception": "welcoming"}), ("visit", {"reception": "welcoming"}),
                         ("impression_confirmed", {}), ("product_understood", {}), ("rep_accepted", {}), ("order_placed", {"amount": 420000, "order_ref": "SO-2026-0815"}),
                         ("info_shared", {"kind": "bid_projects"}), ("easy_access", {"includes_manager": True}), ("deep_relationship", {}),
                         ("info_shared", {"kind": "core"}), ("prefers_us", {}), ("attended_promotion", {"event_name": "2026 华东暖通新品推介会"})]:
        log(type_, jiangong, **attrs)
    log("bid_joined", jiangong, ward, with_our_product=True)
    # 华东机电: level I installer bidding on the developer's tower.
    for type_, attrs in [("materials_sent", {"items": ["samples"]}), ("company_introduced", {}), ("inquiry_received", {}),
                         ("visit", {"reception": "neutral"}), ("visit", {"reception": "neutral"}), ("visit", {"reception": "welcoming"}), ("impression_confirmed", {})]:
        log(type_, huadong, **attrs)
    log("bid_joined", huadong, tower, with_our_product=False)
    # Projects: the ward is in tender with our brand listed and the owner recommending us (70 %).
    log("stage_changed", project=ward, stage="tender_drafting")
    log("spec_agreed", project=ward)
    log("stage_changed", project=ward, stage="bidding")
    log("tender_brand", project=ward, status="listed")
    log("owner_stance", project=ward, stance="recommends")
    # The tower stays cold: the owner is only level I (H30.2), and the one tender listing was
    # logged here by mistake and retracted, so 50 % lacks H50.1 (and a level-II winner, H50.3).
    log("stage_changed", project=tower, stage="tender_drafting")
    log("owner_stance", project=tower, stance="accepts")
    log("competitor_strategy_known", project=tower)
    wrong = log("tender_brand", project=tower, status="listed")
    retract_event(session, rulebook, wrong, "logged on the wrong project: the listing is in the ward's tender", actor="王芳", now=now)
    # The school's gym: won by 安达消防 with our product — 100 %.
    log("bid_joined", anda, campus, with_our_product=True)
    log("bid_won", anda, campus)
    log("stage_changed", project=campus, stage="won")
    # The energy plant: just a lead.
    log("stage_changed", project=plant, stage="lead")
    return True
