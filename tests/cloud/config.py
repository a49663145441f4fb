"""Render the configuration files of every service: loopback addresses, SQLite, no agents."""

from __future__ import annotations

import shutil
from pathlib import Path

from .layout import HOST, PORTS, REGION, Layout, write_private

COMPUTE_HOSTS = {"compute1": "az1", "compute2": "az2"}


def ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        out += [f"{key} = {value}" for key, value in values.items()]
        out.append("")
    return "\n".join(out)


def sqlite(layout: Layout, name: str) -> str:
    return f"sqlite:///{layout.data / 'db' / name}.sqlite"


def _authtoken(layout: Layout, user: str, password: str) -> dict[str, object]:
    return {
        "www_authenticate_uri": layout.url("keystone"),
        "auth_url": layout.url("keystone"),
        "auth_type": "password",
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": user,
        "password": password,
        "region_name": REGION,
        "service_token_roles_required": "true",
    }


def _common(layout: Layout, name: str) -> dict[str, object]:
    return {
        "debug": "false",
        "use_stderr": "true",
        "state_path": layout.data / name,
    }


def _transport(secrets: dict[str, str]) -> str:
    return f"rabbit://bakery:{secrets['rabbitmq']}@{HOST}:{PORTS['rabbitmq']}/"


def render_all(layout: Layout, venvs: dict[str, Path]) -> None:
    secrets = layout.secrets()
    for sub in ("db", "glance/images", "glance/staging", "glance/tasks", "keystone"):
        (layout.data / sub).mkdir(parents=True, exist_ok=True)
    _keystone(layout)
    _glance(layout, secrets, venvs["glance"])
    _placement(layout, secrets)
    _nova(layout, secrets, venvs["nova"])
    _neutron(layout, secrets, venvs["neutron"])
    _rabbitmq(layout, secrets)


def _keystone(layout: Layout) -> None:
    data = layout.data / "keystone"
    text = ini(
        {
            "DEFAULT": _common(layout, "keystone"),
            "database": {"connection": sqlite(layout, "keystone")},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": data / "fernet-keys"},
            "fernet_receipts": {"key_repository": data / "fernet-keys"},
            "credential": {"key_repository": data / "credential-keys"},
            # One keystone process: an in-memory cache saves rebuilding each token per request.
            "cache": {"enabled": "true", "backend": "dogpile.cache.memory"},
            # bcrypt's cheapest cost: every password check of every service costs CPU otherwise.
            "identity": {"password_hash_rounds": 4},
        }
    )
    write_private(layout.etc / "keystone" / "keystone.conf", text)


def _glance(layout: Layout, secrets: dict[str, str], venv: Path) -> None:
    data = layout.data / "glance"
    etc = layout.etc / "glance"
    text = ini(
        {
            "DEFAULT": {**_common(layout, "glance"), "enabled_backends": "fs:file"},
            "database": {"connection": sqlite(layout, "glance")},
            "glance_store": {"default_backend": "fs"},
            "fs": {"filesystem_store_datadir": data / "images"},
            "os_glance_staging_store": {"filesystem_store_datadir": data / "staging"},
            "os_glance_tasks_store": {"filesystem_store_datadir": data / "tasks"},
            "keystone_authtoken": _authtoken(layout, "glance", secrets["service"]),
            "paste_deploy": {"flavor": "keystone"},
            "oslo_messaging_notifications": {"driver": "noop"},
            "oslo_concurrency": {"lock_path": data / "lock"},
        }
    )
    write_private(etc / "glance-api.conf", text)
    shutil.copy(venv / "etc/glance/glance-api-paste.ini", etc / "glance-api-paste.ini")


def _placement(layout: Layout, secrets: dict[str, str]) -> None:
    text = ini(
        {
            "DEFAULT": {"debug": "false", "use_stderr": "true"},
            "placement_database": {"connection": sqlite(layout, "placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": _authtoken(layout, "placement", secrets["service"]),
        }
    )
    write_private(layout.etc / "placement" / "placement.conf", text)


def _service_auth(layout: Layout, secrets: dict[str, str], user: str) -> dict[str, object]:
    return {
        "auth_type": "password",
        "auth_url": layout.url("keystone"),
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": user,
        "password": secrets["service"],
        "region_name": REGION,
        "valid_interfaces": "public",
    }


def _nova(layout: Layout, secrets: dict[str, str], venv: Path) -> None:
    data = layout.data / "nova"
    etc = layout.etc / "nova"
    text = ini(
        {
            "DEFAULT": {
                **_common(layout, "nova"),
                "host": "controller",
                "my_ip": HOST,
                "transport_url": _transport(secrets),
                "compute_driver": "bakery_guest.GuestPlayingDriver",
                # The guest driver powers builders off itself; this is only the safety net.
                "sync_power_state_interval": 30,
                "heal_instance_info_cache_interval": -1,
                "instance_usage_audit": "false",
                "vif_plugging_is_fatal": "false",
                "vif_plugging_timeout": 0,
                "allow_resize_to_same_host": "true",
                # Stop in seconds: the stack is thrown away, nothing is worth waiting for.
                "graceful_shutdown_timeout": 5,
            },
            "api": {"auth_strategy": "keystone"},
            "api_database": {"connection": sqlite(layout, "nova_api")},
            "database": {"connection": sqlite(layout, "nova")},
            "conductor": {"workers": 1},
            "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": -1},
            "keystone_authtoken": _authtoken(layout, "nova", secrets["service"]),
            "placement": _service_auth(layout, secrets, "nova"),
            "neutron": _service_auth(layout, secrets, "nova"),
            "glance": {"valid_interfaces": "public", "region_name": REGION},
            "cinder": {"os_region_name": REGION},
            "wsgi": {"api_paste_config": etc / "api-paste.ini"},
            "oslo_concurrency": {"lock_path": data / "lock"},
            "oslo_messaging_notifications": {"driver": "noop"},
            "vnc": {"enabled": "false"},
            "spice": {"enabled": "false"},
            # Neutron lets only a caller with a service token (role `service`) delete the ports
            # of servers: Nova sends one along with the user's token.
            "service_user": {
                **_service_auth(layout, secrets, "nova"),
                "send_service_user_token": "true",
            },
        }
    )
    write_private(etc / "nova.conf", text)
    shutil.copy(venv / "etc/nova/api-paste.ini", etc / "api-paste.ini")
    for host in COMPUTE_HOSTS:
        state = data / host
        (state / "instances").mkdir(parents=True, exist_ok=True)
        text = ini({"DEFAULT": {"host": host, "state_path": state}})
        (etc / f"{host}.conf").write_text(text)


def _neutron(layout: Layout, secrets: dict[str, str], venv: Path) -> None:
    data = layout.data / "neutron"
    etc = layout.etc / "neutron"
    text = ini(
        {
            "DEFAULT": {
                **_common(layout, "neutron"),
                "host": "controller",
                "core_plugin": "ml2",
                "service_plugins": "",
                "auth_strategy": "keystone",
                "transport_url": _transport(secrets),
                "notify_nova_on_port_status_changes": "false",
                "notify_nova_on_port_data_changes": "false",
                "dhcp_agent_notification": "false",
                "allow_overlapping_ips": "true",
                "api_paste_config": etc / "api-paste.ini",
            },
            "database": {"connection": sqlite(layout, "neutron")},
            "keystone_authtoken": _authtoken(layout, "neutron", secrets["service"]),
            "oslo_concurrency": {"lock_path": data / "lock"},
            "oslo_messaging_notifications": {"driver": "noop"},
            "ml2": {
                "type_drivers": "vxlan,flat",
                "tenant_network_types": "vxlan",
                "mechanism_drivers": "bakery_bindall",
                "extension_drivers": "port_security",
            },
            "ml2_type_vxlan": {"vni_ranges": "1:1000"},
            "securitygroup": {"enable_security_group": "true", "firewall_driver": "noop"},
        }
    )
    write_private(etc / "neutron.conf", text)
    shutil.copy(venv / "etc/neutron/api-paste.ini", etc / "api-paste.ini")


def _rabbitmq(layout: Layout, secrets: dict[str, str]) -> None:
    etc = layout.etc / "rabbitmq"
    text = "\n".join(
        [
            f"listeners.tcp.default = {HOST}:{PORTS['rabbitmq']}",
            "default_user = bakery",
            f"default_pass = {secrets['rabbitmq']}",
            "default_vhost = /",
            "log.console = true",
            "log.console.level = warning",
            "log.file = false",
            "",
        ]
    )
    write_private(etc / "rabbitmq.conf", text)
    (etc / "enabled_plugins").write_text("[].\n")
    (etc / "rabbitmq-env.conf").write_text("")
