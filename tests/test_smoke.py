async def test_health(api):
    status, body = await api.get("/health")
    assert status == 200 and body["status"] == "healthy"
