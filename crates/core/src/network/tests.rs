use super::*;

#[test]
fn cidr_parsing() {
    let c: Cidr = "10.88.0.0/16".parse().unwrap();
    assert_eq!(c.size(), 65536);
    assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 0, 0));
    assert_eq!(c.host_offset(Ipv4Addr::new(10, 88, 0, 0)), None);
    assert_eq!(c.host_offset(Ipv4Addr::new(10, 88, 255, 255)), None);
    assert_eq!(c.host_offset(Ipv4Addr::new(10, 88, 1, 2)), Some(258));
    assert_eq!(c.to_string(), "10.88.0.0/16");
    for bad in [
        "10.88.0.1/16",
        "10.0.0.0/7",
        "10.0.0.0/30",
        "8.8.8.0/24",
        "10.0.0.0",
        "x/8",
        "10.0.0.0/x",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
    let a: Cidr = "10.0.0.0/8".parse().unwrap();
    let b: Cidr = "10.1.0.0/16".parse().unwrap();
    let d: Cidr = "192.168.0.0/24".parse().unwrap();
    assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&d));
}

#[test]
fn allocation_wraps_after_the_cursor() {
    let mut n = Network {
        name: "n".into(),
        cidr: "192.168.0.0/29".parse().unwrap(),
        vni: 1,
        leases: BTreeMap::new(),
        cursor: 1,
        created_ms: 0,
    };
    let got: Vec<u32> = (0..6)
        .map(|i| {
            n.allocate(Lease::Vm {
                name: format!("v{i}"),
            })
            .unwrap()
        })
        .collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    assert!(n.allocate(Lease::Vm { name: "x".into() }).is_err());
    n.leases.remove(&2);
    n.leases.remove(&5);
    assert_eq!(n.allocate(Lease::Vm { name: "y".into() }).unwrap(), 2);
    assert_eq!(n.allocate(Lease::Vm { name: "z".into() }).unwrap(), 5);
}
