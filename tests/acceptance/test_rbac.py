"""Role-based access control (docs/rbac.md): every management endpoint against every kind of
caller, in gateway mode (unsigned tokens, the gateway vouches) and in verify mode (signed).

A permitted call must get its normal answer; a refused one 403, never 401 (the Mender UI logs the
user out on 401), and a refused call must have no effect, here or in the hub.
"""

import uuid

import pytest

from conftest import (MGMT, create_sim_integration, make_jwt, new_device_id, new_tenant,
                      provision_twin_device, useradm_claims, user_claims)

ADMIN_ROLE = "RBAC_ROLE_PERMIT_ALL"
READ_ROLE = "RBAC_ROLE_OBSERVER"

# caller -> mender.roles claim (None: no claim at all)
CALLERS = {
    "admin": [ADMIN_ROLE],
    "read": [READ_ROLE],
    "read+other": ["RBAC_ROLE_CI", READ_ROLE],
    "other role": ["RBAC_ROLE_DEPLOYMENTS_MANAGER"],
    "empty roles": [],
    "no roles claim": None,
    "roles not an array": ADMIN_ROLE,
}
PERMISSION = {"admin": "admin", "read": "read", "read+other": "read", "other role": None,
              "empty roles": None, "no roles claim": None, "roles not an array": None}


class Setup:
    """A tenant with an integration on the simulator and a provisioned device, reachable by
    tokens of any roles in the service's auth mode."""

    def __init__(self, service, sim, mode, jwt_keys=None):
        self.service = service
        self.sim = sim
        self.mode = mode
        self.jwt_keys = jwt_keys
        self.tenant = new_tenant()
        owner = service.user(self.tenant)
        owner.token = self.token([ADMIN_ROLE])
        self.owner = owner
        self.iid = create_sim_integration(owner, sim)
        self.device = provision_twin_device(service, sim, self.tenant, self.iid)
        self.victim = new_device_id()  # DELETE /devices/{id} target, re-linked before each call

    def token(self, roles):
        extra = {} if roles is None else {"mender.roles": roles}
        if self.mode == "verify":
            claims = useradm_claims(self.tenant)
            claims.update(extra)
            return self.jwt_keys.rs256(claims)
        return make_jwt(user_claims(self.tenant, **extra))

    def endpoints(self):
        """(name, needs, prepare, method, path, body, normal status) of every management call."""
        dev, iid = self.device, self.iid
        same_creds = {"type": "sas", "connection_string": self.sim.conn_str()}
        relink = (lambda: self.service.link_device(self.tenant, self.victim, iid))
        return [
            ("list integrations", "read", None, "GET", f"{MGMT}/integrations", None, 200),
            ("get integration", "read", None, "GET", f"{MGMT}/integrations/{iid}", None, 200),
            # The tenant has one: the normal answer to a second one is 409.
            ("create integration", "admin", None, "POST", f"{MGMT}/integrations",
             self.sim.integration(), 409),
            ("set credentials", "admin", None, "PUT", f"{MGMT}/integrations/{iid}/credentials",
             same_creds, 204),
            # In use by the device: the normal answer is 409 and nothing changes.
            ("delete integration", "admin", None, "DELETE", f"{MGMT}/integrations/{iid}", {},
             409),
            ("device states", "read", None, "GET", f"{MGMT}/devices/{dev}/state", None, 200),
            ("device state", "read", None, "GET", f"{MGMT}/devices/{dev}/state/{iid}", None, 200),
            ("replace device state", "admin", None, "PUT", f"{MGMT}/devices/{dev}/state/{iid}",
             {"desired": {"by": "admin"}}, 200),
            ("merge device state", "admin", None, "PATCH", f"{MGMT}/devices/{dev}/state/{iid}",
             {"desired": {"merged": True}}, 200),
            ("unlink device", "admin", relink, "DELETE", f"{MGMT}/devices/{self.victim}", None,
             204),
        ]

    def call(self, endpoint, token, headers=None):
        name, needs, prepare, method, path, body, normal = endpoint
        if prepare:
            prepare()
        h = dict(headers or {})
        h["Authorization"] = f"Bearer {token}"
        kwargs = {"json_body": body} if body is not None else {}
        return self.service.api.request(method, path, headers=h, **kwargs)


def _allowed(caller_permission, needs):
    if caller_permission == "admin":
        return True
    return caller_permission == "read" and needs == "read"


def _check_matrix(setup, callers, permission_of, headers=None, device_scoped_denied=False):
    problems = []
    for caller, roles in callers.items():
        token = setup.token(roles)
        for endpoint in setup.endpoints():
            name, needs, _, method, path, _, normal = endpoint
            allowed = _allowed(permission_of[caller], needs)
            if device_scoped_denied and "/devices/" in path:
                allowed = False
            if endpoint[2]:
                endpoint[2]()  # prepare before the snapshot
            seq = setup.sim.last_seq()
            before = setup.service.snapshot() if not allowed else None
            r = setup.call(endpoint[:2] + (None,) + endpoint[3:], token, headers)
            where = f"{caller} {name} ({method} {path})"
            if allowed and r.status != normal:
                problems.append(f"{where}: expected {normal}, got {r}")
            if not allowed:
                if r.status != 403:
                    problems.append(f"{where}: expected 403, got {r}")
                elif not r.error.startswith("forbidden: "):
                    problems.append(f"{where}: 403 text {r.error!r}")
                if setup.sim.requests(seq):
                    problems.append(f"{where}: refused, yet the hub was called: "
                                    f"{setup.sim.requests(seq)}")
                if setup.service.snapshot() != before:
                    problems.append(f"{where}: refused, yet the store changed")
            if r.status == 401:
                problems.append(f"{where}: 401 for a valid token")
    return problems


@pytest.fixture(params=["gateway", "verify"])
def mode(request):
    return request.param


@pytest.fixture
def rbac_setup(hub_service_factory, iothub_sim, jwt_keys, mode):
    def make(**env):
        full = {"IOT_MANAGER_RBAC": "true"}
        if mode == "verify":
            full.update(jwt_keys.env())
        full.update(env)
        service = hub_service_factory(env=full)
        return Setup(service, iothub_sim, mode, jwt_keys)

    return make


def test_matrix_with_rbac_on(rbac_setup):
    setup = rbac_setup()
    problems = _check_matrix(setup, CALLERS, PERMISSION)
    assert not problems, "\n".join(problems)
    # Admin's writes did reach the hub; the other callers' did not.
    assert setup.sim.desired(setup.device) == {"by": "admin", "merged": True}


def test_denied_text_names_the_permission(rbac_setup):
    setup = rbac_setup()
    r = setup.service.api.get(f"{MGMT}/integrations", token=setup.token(None))
    assert r.status == 403 and r.error == "forbidden: this operation needs the read permission", r
    r = setup.service.api.delete(f"{MGMT}/integrations/{setup.iid}",
                                 token=setup.token([READ_ROLE]))
    assert r.status == 403, r
    assert r.error == "forbidden: this operation needs the admin permission", r


def test_rbac_off_allows_everything_to_any_user(rbac_setup):
    setup = rbac_setup(IOT_MANAGER_RBAC="false")
    callers = {"no roles claim": None, "other role": ["RBAC_ROLE_CI"], "read": [READ_ROLE]}
    problems = _check_matrix(setup, callers, {c: "admin" for c in callers})
    assert not problems, "\n".join(problems)


def test_rbac_is_off_by_default(hub_service_factory, iothub_sim):
    service = hub_service_factory(env={"IOT_MANAGER_RBAC": None})
    setup = Setup(service, iothub_sim, "gateway")
    problems = _check_matrix(setup, {"no roles claim": None}, {"no roles claim": "admin"})
    assert not problems, "\n".join(problems)


def test_custom_role_mapping(rbac_setup):
    setup = rbac_setup(
        IOT_MANAGER_RBAC_READ_ROLES="RBAC_ROLE_OBSERVER RBAC_ROLE_DEPLOYMENTS_MANAGER",
        IOT_MANAGER_RBAC_ADMIN_ROLES="RBAC_ROLE_PERMIT_ALL IoT-Admins")
    callers = {"deployments manager": ["RBAC_ROLE_DEPLOYMENTS_MANAGER"],
               "observer": [READ_ROLE],
               "custom admin": ["IoT-Admins"],
               "release manager": ["RBAC_ROLE_CI"]}
    permission = {"deployments manager": "read", "observer": "read", "custom admin": "admin",
                  "release manager": None}
    problems = _check_matrix(setup, callers, permission)
    assert not problems, "\n".join(problems)


def test_custom_read_roles_replace_the_default(rbac_setup):
    setup = rbac_setup(IOT_MANAGER_RBAC_READ_ROLES="Twin-Viewers")
    callers = {"observer": [READ_ROLE], "twin viewer": ["Twin-Viewers"]}
    problems = _check_matrix(setup, callers, {"observer": None, "twin viewer": "read"})
    assert not problems, "\n".join(problems)


def test_inventory_group_scope_refuses_device_endpoints(rbac_setup):
    setup = rbac_setup()
    scoped = {"X-MEN-RBAC-Inventory-Groups": "lab,field"}
    callers = {"admin": [ADMIN_ROLE], "read": [READ_ROLE], "no roles claim": None}
    problems = _check_matrix(setup, callers, PERMISSION, headers=scoped,
                             device_scoped_denied=True)
    assert not problems, "\n".join(problems)
    # Without the header (or with an empty one) the admin is unrestricted again.
    for headers in (None, {"X-MEN-RBAC-Inventory-Groups": ""}):
        r = setup.service.api.get(f"{MGMT}/devices/{setup.device}/state",
                                  token=setup.token([ADMIN_ROLE]), headers=headers)
        assert r.status == 200, (headers, r)


def test_inventory_group_header_is_ignored_with_rbac_off(rbac_setup):
    setup = rbac_setup(IOT_MANAGER_RBAC="false")
    scoped = {"X-MEN-RBAC-Inventory-Groups": "lab"}
    problems = _check_matrix(setup, {"no roles claim": None}, {"no roles claim": "admin"},
                             headers=scoped)
    assert not problems, "\n".join(problems)


def test_events_endpoint(rbac_setup):
    setup = rbac_setup()
    path = f"{MGMT}/events"
    probe = setup.service.api.get(path, token=setup.token([ADMIN_ROLE]), check=False)
    if probe.status == 404 and probe.json().get("error") == "not found":
        pytest.skip("GET /events is not routed by this build (router answers 404 'not found')")
    problems = []
    for caller, roles in CALLERS.items():
        r = setup.service.api.get(path, token=setup.token(roles))
        expected = 200 if PERMISSION[caller] in ("admin", "read") else 403
        if r.status != expected:
            problems.append(f"{caller}: expected {expected}, got {r}")
    # Events are not device-scoped: the group header does not restrict them.
    r = setup.service.api.get(path, token=setup.token([READ_ROLE]),
                              headers={"X-MEN-RBAC-Inventory-Groups": "lab"})
    if r.status != 200:
        problems.append(f"read with a group scope: {r}")
    assert not problems, "\n".join(problems)


def test_device_tokens_stay_403_with_rbac(rbac_setup):
    setup = rbac_setup()
    claims = useradm_claims(setup.tenant, roles=[ADMIN_ROLE])
    claims.pop("mender.user")
    claims["mender.device"] = True
    token = setup.jwt_keys.rs256(claims) if setup.mode == "verify" else make_jwt(claims)
    for endpoint in setup.endpoints():
        r = setup.call(endpoint, token)
        assert r.status == 403, (endpoint[0], r)
        assert r.error == "user identity missing from authorization token", r


def test_unknown_ids_are_not_hidden_behind_403(rbac_setup):
    """A permitted caller sees the normal 404s; a refused one learns nothing (403 first)."""
    setup = rbac_setup()
    unknown = str(uuid.uuid4())
    read, other = setup.token([READ_ROLE]), setup.token(["RBAC_ROLE_CI"])
    r = setup.service.api.get(f"{MGMT}/integrations/{unknown}", token=read)
    assert r.status == 404, r
    r = setup.service.api.get(f"{MGMT}/integrations/{unknown}", token=other)
    assert r.status == 403, r
    r = setup.service.api.get(f"{MGMT}/devices/{new_device_id()}/state", token=read)
    assert r.status == 404 and r.error == "device not found", r
    r = setup.service.api.get(f"{MGMT}/devices/{new_device_id()}/state", token=other)
    assert r.status == 403, r
