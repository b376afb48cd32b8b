//! Devices and accounts for tests.

use kith_protocol::keys::{DeviceAgreementKey, DeviceSigningKey, system_rng};
use kith_protocol::roster::NewDevice;

/// A new device's signing key and its roster entry, named `name`, from the system generator.
pub fn new_device(name: &str) -> (DeviceSigningKey, NewDevice) {
    let mut rng = system_rng();
    let key = DeviceSigningKey::generate(&mut rng);
    let device = NewDevice {
        signing_key: key.public(),
        agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
        name: name.to_owned(),
    };
    (key, device)
}
